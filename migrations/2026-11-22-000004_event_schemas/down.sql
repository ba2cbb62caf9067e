DROP TABLE event_schemas;
