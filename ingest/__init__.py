"""MQTT in: decoding and validating readings, storing each (sensor, ts) once, acknowledging after commit."""
