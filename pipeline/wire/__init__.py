"""What travels on Kafka, shared by the worker and the gateway side: the Avro datum batch envelope
and dead letters (`codec`, compiled fast path `_avrofast`), topic names (`topics`), how every Kafka
client connects (`kafka_config`) and the producer and topic admin (`producer`)."""
