"""The report formats summary.json, computes nothing; imports inputs and posterior constants."""
