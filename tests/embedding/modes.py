"""The collection modes every embedding feature is tested in."""

MODES = [("copy", False), ("remap", False), ("remap", True)]  # (compactor, concurrent)
MODE_IDS = ["copy", "remap", "remap-concurrent"]
