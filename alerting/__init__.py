"""Turning alarms into messages along enterprise → town → district until someone acknowledges."""
