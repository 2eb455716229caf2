"""The reconciler: observe once, plan without I/O, execute without decisions."""
