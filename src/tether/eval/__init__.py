"""Win-rate evaluation: generate from the policy and the reference, judge, and report."""
