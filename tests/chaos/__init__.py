"""The fault suite (``make chaos``): ``run.py`` drives it; not collected by pytest (no ``test_`` files)."""
