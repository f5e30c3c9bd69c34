"""The bridge: MQTT readings into Kafka `readings` and MongoDB `iot.readings`."""
