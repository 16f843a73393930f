{{/* Names, labels and the pieces every workload shares. */}}

{{- define "streams.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streams.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Common labels; call with (dict "ctx" $ "component" "processor"). */}}
{{- define "streams.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "streams.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: streams
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "streams.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streams.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
The image: [registry/]repository, then @digest when image.digest is set (the tag is then
ignored), else :tag (default: the chart's appVersion). global.imageRegistry replaces
image.registry, for mirrors and air-gapped clusters.
*/}}
{{- define "streams.image" -}}
{{- $i := .Values.image }}
{{- $registry := ((.Values.global).imageRegistry) | default $i.registry }}
{{- $name := ternary (printf "%s/%s" $registry $i.repository) $i.repository (ne $registry "") }}
{{- if $i.digest }}
{{- printf "%s@%s" $name $i.digest }}
{{- else }}
{{- printf "%s:%s" $name (default .Chart.AppVersion $i.tag) }}
{{- end }}
{{- end }}

{{- define "streams.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streams.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the workloads read: the operator's existingSecret or the chart's. */}}
{{- define "streams.secretName" -}}
{{- default (include "streams.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Namespace of the compute poller's objects (computePoller.namespace, default the release's). */}}
{{- define "streams.computeNamespace" -}}
{{- default .Release.Namespace .Values.computePoller.namespace }}
{{- end }}

{{/* Kafka security.protocol from the TLS and SASL values. */}}
{{- define "streams.kafkaProtocol" -}}
{{- $tls := .Values.kafka.tls.enabled }}
{{- $sasl := .Values.kafka.sasl.mechanism }}
{{- if and $tls $sasl }}SASL_SSL{{ else if $tls }}SSL{{ else if $sasl }}SASL_PLAINTEXT{{ else }}PLAINTEXT{{ end }}
{{- end }}

{{/*
streams.yaml (streams/config.py's Settings): what the chart derives from its values, then the
operator's `config` over it, then the paths and listen address that follow the pod's layout.
Workloads read ports back from this document, so probes and settings cannot disagree.
*/}}
{{- define "streams.settings" -}}
{{- $v := .Values }}
{{- range $section, $keys := dict "api" (dict "tokens" "api.tokens" "keystone" "api.keystone") "ceilometer" (dict "telemetry_secret" "ceilometerBridge.telemetrySecret") }}
{{- range $key, $value := $keys }}
{{- if hasKey (index $v.config $section | default dict) $key }}
{{- fail (printf "config.%s.%s is a credential, and config becomes a ConfigMap: set %s instead (stored in the chart's Secret), or put the key in secrets.existingSecret" $section $key $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- $kafka := dict "bootstrap_servers" $v.kafka.bootstrapServers "partitions" $v.kafka.partitions
      "replication_factor" $v.kafka.replicationFactor "security_protocol" (include "streams.kafkaProtocol" .) }}
{{- with $v.kafka.sasl.mechanism }}
{{- $_ := set $kafka "sasl_mechanism" . }}
{{- $_ := set $kafka "sasl_username" $v.kafka.sasl.username }}
{{- end }}
{{- $coordination := dict "root" $v.zookeeper.root }}
{{- with $v.zookeeper.hosts }}{{ $_ := set $coordination "hosts" . }}{{ end }}
{{- with $v.zookeeper.username }}{{ $_ := set $coordination "username" . }}{{ end }}
{{- $base := dict "kafka" $kafka "coordination" $coordination }}
{{- with $v.clickhouse.cluster }}
{{- $_ := set $base "clickhouse" (dict "cluster" . "zookeeper_path" ($v.clickhouse.zookeeperPath | default (printf "%s/clickhouse" (trimSuffix "/" $v.zookeeper.root)))) }}
{{- end }}
{{- with $v.signing.active }}{{ $_ := set $base "signing" (dict "active" .) }}{{ end }}
{{- $settings := mergeOverwrite $base (deepCopy $v.config) }}
{{- $processor := dict "data_dir" "/var/lib/streams/faust" }}
{{- if $v.pipeline }}{{ $_ := set $processor "pipeline" "/etc/streams/pipeline.yaml" }}{{ end }}
{{- $pinned := dict "metrics_host" "0.0.0.0" "processor" $processor "kafka" (dict) "api" (dict "host" "0.0.0.0") }}
{{- if and $v.ceilometerBridge.enabled $v.ceilometerBridge.meters }}
{{- $_ := set $pinned "ceilometer" (dict "meters" "/etc/streams/ceilometer-meters.yaml") }}
{{- end }}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.caSecret }}
{{- $_ := set $pinned.kafka "ssl_ca_location" (printf "/etc/kafka-tls/ca/%s" $v.kafka.tls.caKey) }}
{{- end }}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.clientSecret }}
{{- $_ := set $pinned.kafka "ssl_certificate_location" "/etc/kafka-tls/client/tls.crt" }}
{{- $_ := set $pinned.kafka "ssl_key_location" "/etc/kafka-tls/client/tls.key" }}
{{- end }}
{{- toYaml (mergeOverwrite $settings $pinned) }}
{{- end }}

{{/* The files of the config ConfigMap, name -> text (streams.yaml, pipeline.yaml, polling files). */}}
{{- define "streams.configFiles" -}}
{{- $files := dict "streams.yaml" (include "streams.settings" .) }}
{{- if .Values.pipeline }}
{{- $_ := set $files "pipeline.yaml" (toYaml .Values.pipeline) }}
{{- end }}
{{- if .Values.computePoller.enabled }}
{{- $_ := set $files "polling-compute.yaml" (tpl (toYaml .Values.computePoller.polling) .) }}
{{- end }}
{{- if .Values.centralPoller.enabled }}
{{- $_ := set $files "polling-central.yaml" (tpl (toYaml .Values.centralPoller.polling) .) }}
{{- end }}
{{- if and .Values.ceilometerBridge.enabled .Values.ceilometerBridge.meters }}
{{- $_ := set $files "ceilometer-meters.yaml" (toYaml .Values.ceilometerBridge.meters) }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
What each component is, in one table: its values key, the arguments of `streams`, the settings
section holding its metrics port, the streams.yaml sections and config files it reads (its config
checksum covers only those, so an edit rolls only the workloads it concerns), the Secret keys it
reads (as STREAMS_* variables; its secret checksum covers only those) and its registry binary.
A new service is one more entry here and one template calling "streams.deployment".
Sections not named in "streams.knownSections" (e.g. a new service's) count for every component.
*/}}
{{- define "streams.components" -}}
compute-poller:
  values: computePoller
  container: poller
  args: [poll, --agent, compute, --polling, /etc/streams/polling-compute.yaml]
  portSection: poller
  sections: [kafka, signing, poller, coordination]
  files: [streams.yaml, polling-compute.yaml]
  secretKeys: [signing-keys]
  registry: streams-poll-compute
central-poller:
  values: centralPoller
  container: poller
  args: [poll, --agent, central, --polling, /etc/streams/polling-central.yaml]
  portSection: poller
  sections: [kafka, signing, poller, coordination]
  files: [streams.yaml, polling-central.yaml]
  secretKeys: [signing-keys]
  registry: streams-poll-central
processor:
  values: processor
  container: processor
  args: [process]
  portSection: processor
  sections: [kafka, clickhouse, signing, processor, coordination, alarms]
  files: [streams.yaml, pipeline.yaml]
  secretKeys: [signing-keys, clickhouse-url]
  registry: streams-process
notifier:
  values: notifier
  container: notifier
  args: [notify]
  portSection: notifier
  sections: [kafka, notifier, signing]
  files: [streams.yaml]
  secretKeys: [signing-keys]
api:
  values: api
  container: api
  args: [api]
  portSection: api
  sections: [api, clickhouse, coordination]
  files: [streams.yaml]
  # plus the credential of its api.auth ("streams.componentSecretKeys")
  secretKeys: [clickhouse-url]
  registry: streams-api
ceilometer-bridge:
  values: ceilometerBridge
  container: bridge
  args: [bridge, ceilometer]
  portSection: ceilometer
  # processor: the bridge keeps its records within the processor's limits and clock skew
  sections: [kafka, clickhouse, signing, processor, ceilometer]
  files: [streams.yaml, ceilometer-meters.yaml]
  secretKeys: [signing-keys, clickhouse-url, ceilometer-telemetry-secret]
migrations:
  values: migrations
  sections: [kafka, clickhouse, coordination, processor, ceilometer]
  files: [streams.yaml]
  secretKeys: [clickhouse-url, clickhouse-readonly-password]
{{- end }}

{{- define "streams.knownSections" -}}
[kafka, clickhouse, signing, poller, processor, coordination, alarms, notifier, api, ceilometer]
{{- end }}

{{/* The environment variable each Secret key becomes (they rank above streams.yaml). */}}
{{- define "streams.secretEnv" -}}
signing-keys: STREAMS_SIGNING__KEYS
clickhouse-url: STREAMS_CLICKHOUSE__URL
clickhouse-readonly-password: STREAMS_CLICKHOUSE__READONLY_PASSWORD
kafka-sasl-password: STREAMS_KAFKA__SASL_PASSWORD
zookeeper-password: STREAMS_COORDINATION__PASSWORD
api-tokens: STREAMS_API__TOKENS
api-keystone: STREAMS_API__KEYSTONE
ceilometer-telemetry-secret: STREAMS_CEILOMETER__TELEMETRY_SECRET
{{- end }}

{{/* api.auth as the API will read it: config.api.auth, default token (streams/config.py). */}}
{{- define "streams.apiAuth" -}}
{{- ((.Values.config).api).auth | default "token" }}
{{- end }}

{{/* Secret keys a pod may start without: clickhouse-readonly-password (no read-only user), and the
telemetry secret when config.ceilometer.allow_empty_secret accepts unsigned Ceilometer data. */}}
{{- define "streams.optionalSecretKeys" -}}
{{- $keys := list "clickhouse-readonly-password" }}
{{- if ((.Values.config).ceilometer).allow_empty_secret }}{{ $keys = append $keys "ceilometer-telemetry-secret" }}{{ end }}
{{- toJson $keys }}
{{- end }}

{{/* Secret keys a component reads: its own (the API's also by api.auth), the SASL password when SASL
is on and it uses Kafka (the API does not), and the ZooKeeper
digest password when zookeeper.username is set (streams.yaml then names the user, and the settings
refuse a user without its password, whichever sections the component uses). */}}
{{- define "streams.componentSecretKeys" -}}
{{- $spec := index (include "streams.components" .ctx | fromYaml) .component }}
{{- $keys := $spec.secretKeys | default list }}
{{- if eq .component "api" }}
{{- with get (dict "token" "api-tokens" "keystone" "api-keystone") (include "streams.apiAuth" .ctx) }}{{ $keys = append $keys . }}{{ end }}
{{- end }}
{{- if and .ctx.Values.kafka.sasl.mechanism (has "kafka" $spec.sections) }}{{ $keys = append $keys "kafka-sasl-password" }}{{ end }}
{{- if .ctx.Values.zookeeper.username }}{{ $keys = append $keys "zookeeper-password" }}{{ end }}
{{- toJson $keys }}
{{- end }}

{{/*
Signing keys of the chart's Secret; call with (dict "ctx" $ "online" bool "installed" map), where
"installed" is the data of the installed Secret (base64 values) and "online" says whether `lookup`
reached a cluster. Given keys win; else the installed Secret's keys are kept; else, on a real
install, one key is generated; offline (helm template, --dry-run, Argo CD) there is no way to
know the installed key, and a new one on every render would break verification: fail.
*/}}
{{- define "streams.resolveSigningKeys" -}}
{{- $v := .ctx.Values }}
{{- if $v.signing.keys }}
{{- toJson $v.signing.keys }}
{{- else if index (.installed | default dict) "signing-keys" }}
{{- index .installed "signing-keys" | b64dec }}
{{- else if .online }}
{{- toJson (dict "generated" (randAlphaNum 48)) }}
{{- else }}
{{- fail (printf "signing.keys is empty and secrets.existingSecret is not set, and the installed Secret %s/%s cannot be read: this render has no cluster to look it up (helm template, helm install --dry-run, Argo CD). A key generated here would change on every render, and records signed with the old one would be dead-lettered. Set signing.keys (e.g. --set-json 'signing.keys={\"2026-11\":\"<64 hex characters from openssl rand -hex 32>\"}') or create a Secret and set secrets.existingSecret." .ctx.Release.Namespace (include "streams.fullname" .ctx)) }}
{{- end }}
{{- end }}

{{/*
Data of the chart's Secret (key -> plain text), resolved once per render: every object that
needs it (the Secret, the compute namespace's copy, the checksums) sees the same generated key.
*/}}
{{- define "streams.secretData" -}}
{{- if not (hasKey .Values "__streamsSecretData") }}
{{- $installed := dict }}
{{- $probe := lookup "v1" "ConfigMap" .Release.Namespace "" }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "streams.fullname" .) }}
{{- if $secret }}{{ $installed = $secret.data | default dict }}{{ end }}
{{- $keys := include "streams.resolveSigningKeys" (dict "ctx" . "online" (not (empty $probe)) "installed" $installed) }}
{{- $data := dict "signing-keys" $keys "clickhouse-url" .Values.clickhouse.url
      "clickhouse-readonly-password" .Values.clickhouse.readonlyPassword }}
{{- if .Values.kafka.sasl.mechanism }}
{{- $_ := set $data "kafka-sasl-password" .Values.kafka.sasl.password }}
{{- end }}
{{- if .Values.zookeeper.username }}
{{- $_ := set $data "zookeeper-password" .Values.zookeeper.password }}
{{- end }}
{{- if .Values.api.enabled }}
{{- with .Values.api.tokens }}{{ $_ := set $data "api-tokens" (toJson .) }}{{ end }}
{{- with .Values.api.keystone }}{{ $_ := set $data "api-keystone" (toJson .) }}{{ end }}
{{- end }}
{{- if .Values.ceilometerBridge.enabled }}
{{- $_ := set $data "ceilometer-telemetry-secret" .Values.ceilometerBridge.telemetrySecret }}
{{- end }}
{{- $_ := set .Values "__streamsSecretData" $data }}
{{- end }}
{{- toYaml (get .Values "__streamsSecretData") }}
{{- end }}

{{/*
Pod annotations checksum/config and checksum/secret of one component; call with
(dict "ctx" $ "component" name). The config checksum covers the streams.yaml sections and files
the component reads; the secret checksum the Secret keys it reads (with secrets.existingSecret:
the installed Secret's values when `lookup` can read them, else its name only).
*/}}
{{- define "streams.checksums" -}}
{{- $ctx := .ctx }}
{{- $spec := index (include "streams.components" $ctx | fromYaml) .component }}
{{- $settings := include "streams.settings" $ctx | fromYaml }}
{{- $known := include "streams.knownSections" $ctx | fromYamlArray }}
{{- $picked := dict }}
{{- range $k, $v := $settings }}
{{- if or (has $k $spec.sections) (not (has $k $known)) }}{{ $_ := set $picked $k $v }}{{ end }}
{{- end }}
{{- $files := include "streams.configFiles" $ctx | fromYaml }}
{{- $text := list (toJson $picked) }}
{{- range $spec.files }}{{ if ne . "streams.yaml" }}{{ $text = append $text (index $files . | default "") }}{{ end }}{{ end }}
{{- $keys := include "streams.componentSecretKeys" . | fromJsonArray }}
{{- $secret := dict }}
{{- if $ctx.Values.secrets.existingSecret }}
{{- $installed := lookup "v1" "Secret" (.namespace | default $ctx.Release.Namespace) $ctx.Values.secrets.existingSecret }}
{{- $_ := set $secret "existingSecret" $ctx.Values.secrets.existingSecret }}
{{- range $keys }}{{ $_ := set $secret . (index (($installed).data | default dict) . | default "") }}{{ end }}
{{- else }}
{{- $data := include "streams.secretData" $ctx | fromYaml }}
{{- range $keys }}{{ $_ := set $secret . (index $data . | default "") }}{{ end }}
{{- end }}
checksum/config: {{ join "\n---\n" $text | sha256sum }}
checksum/secret: {{ toJson $secret | sha256sum }}
{{- end }}

{{/*
Environment of a container; call with (dict "ctx" $ "component" name "secret" name "extra" list).
Credentials come from the Secret as STREAMS_<SECTION>__<KEY> variables, which rank above
streams.yaml; then `extra` (the workload's own variables), extraEnv and <component>.extraEnv.
*/}}
{{- define "streams.env" -}}
{{- $v := .ctx.Values }}
{{- $secret := .secret | default (include "streams.secretName" .ctx) }}
{{- $names := include "streams.secretEnv" .ctx | fromYaml }}
{{- $optional := include "streams.optionalSecretKeys" .ctx | fromJsonArray -}}
- name: STREAMS_CONFIG
  value: /etc/streams/streams.yaml
{{- range include "streams.componentSecretKeys" . | fromJsonArray }}
- name: {{ index $names . }}
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ . }}{{ if has . $optional }}, optional: true{{ end }}}
{{- end }}
{{- with $v.kafka.sasl.mechanism }}
# KEDA's TriggerAuthentication reads the SASL user name from here.
- name: STREAMS_KAFKA__SASL_USERNAME
  value: {{ $v.kafka.sasl.username | quote }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with (.values).extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* envFrom of a container: extraEnvFrom, then <component>.extraEnvFrom. */}}
{{- define "streams.envFrom" -}}
{{- $all := concat (.ctx.Values.extraEnvFrom | default list) ((.values).extraEnvFrom | default list) }}
{{- with $all }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Volume mounts shared by every container: config, /tmp, Kafka TLS files. The TLS Secrets are
not mounted below /etc/streams: a configMap volume is read-only, so the kubelet could not create
mount points inside it. Then `extra`, extraVolumeMounts and <component>.extraVolumeMounts. */}}
{{- define "streams.volumeMounts" -}}
{{- $v := .ctx.Values -}}
- name: config
  mountPath: /etc/streams
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and $v.kafka.tls.enabled $v.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/kafka-tls/ca
  readOnly: true
{{- end }}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.clientSecret }}
- name: kafka-client
  mountPath: /etc/kafka-tls/client
  readOnly: true
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- with (.values).extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The volumes behind streams.volumeMounts; call with (dict "ctx" $ "configMap" name "values" map "extra" list). */}}
{{- define "streams.volumes" -}}
{{- $v := .ctx.Values -}}
- name: config
  configMap:
    name: {{ .configMap }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with $v.kafka.tls }}
{{- if and .enabled .caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .caSecret }}
{{- end }}
{{- if and .enabled .clientSecret }}
- name: kafka-client
  secret:
    secretName: {{ .clientSecret }}
    items:
      - {key: {{ .clientCertKey }}, path: tls.crt}
      - {key: {{ .clientKeyKey }}, path: tls.key}
{{- end }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- with (.values).extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* HTTP probes on the metrics port: `probes`, with <component>.probes over it; call with (dict "ctx" $ "values" map). */}}
{{- define "streams.probes" -}}
{{- $p := mergeOverwrite (deepCopy .ctx.Values.probes) (deepCopy ((.values).probes | default dict)) -}}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml $p.startup | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml $p.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  {{- toYaml $p.readiness | nindent 2 }}
{{- end }}

{{/* Pod-level fields shared by every workload. */}}
{{- define "streams.podSpecCommon" -}}
serviceAccountName: {{ include "streams.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod labels: the component's labels, podLabels, <component>.podLabels. */}}
{{- define "streams.podLabels" -}}
{{- include "streams.labels" . }}
{{- with .ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- with (.values).podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations: the component's checksums, podAnnotations, <component>.podAnnotations. */}}
{{- define "streams.podAnnotations" -}}
{{- include "streams.checksums" . | trim }}
{{- with .ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with (.values).podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The pod template of a long-running component; call with a dict:
  ctx, component (a key of "streams.components"), values (its values), port (metrics port),
  ports (more container ports, before `metrics`),
  env / volumes / volumeMounts (extra lists), podFields (extra pod spec fields),
  configMap (default: the release's), secret (default: streams.secretName), nodeSelector (defaults).
*/}}
{{- define "streams.podTemplate" -}}
{{- $ctx := .ctx }}
{{- $c := .values }}
{{- $spec := index (include "streams.components" $ctx | fromYaml) .component -}}
metadata:
  labels:
    {{- include "streams.podLabels" . | nindent 4 }}
  annotations:
    {{- include "streams.podAnnotations" . | nindent 4 }}
spec:
  {{- include "streams.podSpecCommon" $ctx | nindent 2 }}
  {{- with .podFields }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with $c.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  containers:
    - name: {{ $spec.container }}
      image: {{ include "streams.image" $ctx }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      args: {{ toJson $spec.args }}
      env:
        {{- include "streams.env" (dict "ctx" $ctx "component" .component "values" $c "secret" .secret "extra" .env) | nindent 8 }}
      {{- with include "streams.envFrom" (dict "ctx" $ctx "values" $c) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      ports:
        {{- with .ports }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        - name: metrics
          containerPort: {{ .port }}
          protocol: TCP
      {{- include "streams.probes" (dict "ctx" $ctx "values" $c) | nindent 6 }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- toYaml (mergeOverwrite (deepCopy $ctx.Values.securityContext) ($c.securityContext | default dict)) | nindent 8 }}
      volumeMounts:
        {{- include "streams.volumeMounts" (dict "ctx" $ctx "values" $c "extra" .volumeMounts) | nindent 8 }}
  volumes:
    {{- include "streams.volumes" (dict "ctx" $ctx "values" $c "extra" .volumes "configMap" (.configMap | default (include "streams.fullname" $ctx))) | nindent 4 }}
  {{- with mergeOverwrite (deepCopy (.nodeSelector | default dict)) ($c.nodeSelector | default dict) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.topologySpreadConstraints }}
  {{- $spread := list }}
  {{- range . }}
  {{- $spread = append $spread (merge (deepCopy .) (dict "labelSelector" (dict "matchLabels" (include "streams.selectorLabels" $ | fromYaml)))) }}
  {{- end }}
  topologySpreadConstraints:
    {{- toYaml $spread | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
A long-running service: Deployment, metrics Service and PodDisruptionBudget; call with the dict
of "streams.podTemplate" plus, optionally, replicas (omitted: left to an autoscaler), strategy,
terminationGracePeriodSeconds (read from values) and servicePorts (more Service ports, before
`metrics`: the API's).
*/}}
{{- define "streams.deployment" -}}
{{- $ctx := .ctx }}
{{- $c := .values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "streams.fullname" $ctx }}-{{ .component }}
  labels:
    {{- include "streams.labels" . | nindent 4 }}
spec:
  {{- if hasKey . "replicas" }}
  replicas: {{ .replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "streams.selectorLabels" . | nindent 6 }}
  {{- with .strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    {{- include "streams.podTemplate" . | nindent 4 }}
---
{{ include "streams.metricsService" . }}
{{- if ($c.pdb).enabled }}
---
{{ include "streams.pdb" (dict "ctx" $ctx "component" .component "pdb" $c.pdb) }}
{{- end }}
{{- end }}

{{/* A metrics Service; call with (dict "ctx" $ "component" name "port" n ["namespace" ns] ["servicePorts" list]). */}}
{{- define "streams.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "streams.fullname" .ctx }}-{{ .component }}
  {{- with .namespace }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "streams.labels" . | nindent 4 }}
spec:
  type: {{ .ctx.Values.metrics.service.type }}
  selector:
    {{- include "streams.selectorLabels" . | nindent 4 }}
  ports:
    {{- with .servicePorts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    - name: metrics
      port: {{ .port }}
      targetPort: metrics
      protocol: TCP
{{- end }}

{{/* A PodDisruptionBudget; call with (dict "ctx" $ "component" name "pdb" values). */}}
{{- define "streams.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "streams.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "streams.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "streams.selectorLabels" . | nindent 6 }}
{{- end }}
