"""`tether demo`: the whole method end to end on a synthetic task, offline, in minutes on a CPU."""
