"""pytest plugin registered by the ``secretivex`` distribution (entry point ``pytest11``)."""
