"""The parameter server: merge rules (pure), the server loop and the worker commit loop."""
