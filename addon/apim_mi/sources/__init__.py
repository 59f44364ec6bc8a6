"""Rules sources besides ``rules.yaml``/``.xml``: each turns a foreign configuration into a ``RulesConfig``."""
