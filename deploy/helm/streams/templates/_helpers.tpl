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

{{- define "streams.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
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
{{- with $v.signing.active }}{{ $_ := set $base "signing" (dict "active" .) }}{{ end }}
{{- $settings := mergeOverwrite $base (deepCopy $v.config) }}
{{- $processor := dict "data_dir" "/var/lib/streams/faust" }}
{{- if $v.pipeline }}{{ $_ := set $processor "pipeline" "/etc/streams/pipeline.yaml" }}{{ end }}
{{- $pinned := dict "metrics_host" "0.0.0.0" "processor" $processor "kafka" (dict) }}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.caSecret }}
{{- $_ := set $pinned.kafka "ssl_ca_location" (printf "/etc/kafka-tls/ca/%s" $v.kafka.tls.caKey) }}
{{- end }}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.clientSecret }}
{{- $_ := set $pinned.kafka "ssl_certificate_location" "/etc/kafka-tls/client/tls.crt" }}
{{- $_ := set $pinned.kafka "ssl_key_location" "/etc/kafka-tls/client/tls.key" }}
{{- end }}
{{- toYaml (mergeOverwrite $settings $pinned) }}
{{- end }}

{{/*
Environment of a container; call with (dict "ctx" $ "signing" bool "clickhouse" bool).
Credentials come from the Secret as STREAMS_<SECTION>__<KEY> variables, which rank above streams.yaml.
*/}}
{{- define "streams.env" -}}
{{- $v := .ctx.Values }}
{{- $secret := include "streams.secretName" .ctx -}}
- name: STREAMS_CONFIG
  value: /etc/streams/streams.yaml
{{- if .signing }}
- name: STREAMS_SIGNING__KEYS
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: signing-keys}
{{- end }}
{{- if .clickhouse }}
- name: STREAMS_CLICKHOUSE__URL
  valueFrom:
    secretKeyRef: {name: {{ .secret | default $secret }}, key: clickhouse-url}
{{- end }}
{{- if .readonly }}
- name: STREAMS_CLICKHOUSE__READONLY_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .secret | default $secret }}, key: clickhouse-readonly-password, optional: true}
{{- end }}
{{- if $v.kafka.sasl.mechanism }}
- name: STREAMS_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .secret | default $secret }}, key: kafka-sasl-password}
{{- end }}
{{- if $v.zookeeper.username }}
- name: STREAMS_COORDINATION__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .secret | default $secret }}, key: zookeeper-password}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts shared by every container: config, /tmp, Kafka TLS files. The TLS Secrets are
not mounted below /etc/streams: a configMap volume is read-only, so the kubelet could not create
mount points inside it. */}}
{{- define "streams.volumeMounts" -}}
- name: config
  mountPath: /etc/streams
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/kafka-tls/ca
  readOnly: true
{{- end }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.clientSecret }}
- name: kafka-client
  mountPath: /etc/kafka-tls/client
  readOnly: true
{{- end }}
{{- end }}

{{/* The volumes behind streams.volumeMounts; call with (dict "ctx" $ "configMap" name). */}}
{{- define "streams.volumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .ctx.Values.kafka.tls }}
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
{{- end }}

{{/* HTTP probes on the metrics server; call with (dict "ctx" $). */}}
{{- define "streams.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml .ctx.Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml .ctx.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  {{- toYaml .ctx.Values.probes.readiness | nindent 2 }}
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

{{/* Pod annotations: roll the pods when their config or the chart's Secret changes. */}}
{{- define "streams.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A metrics Service; call with (dict "ctx" $ "component" name "port" n). */}}
{{- define "streams.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "streams.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "streams.labels" . | nindent 4 }}
spec:
  type: {{ .ctx.Values.metrics.service.type }}
  selector:
    {{- include "streams.selectorLabels" . | nindent 4 }}
  ports:
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
