"""`make bench-routing`: routing quality of every policy on simulated engines (issue 5)."""
