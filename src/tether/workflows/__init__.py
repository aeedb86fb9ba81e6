"""The workflows around training: assembling preference pairs and iterative DPO."""
