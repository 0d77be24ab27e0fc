"""The collector side's commands, one module per group: ``serve``, ``demo``, ``admin`` and ``questions``."""
