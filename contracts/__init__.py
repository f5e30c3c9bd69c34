"""What crosses service boundaries in edgepipe: the event schema, settings,
client factories, logging and the operations endpoint shared by every service."""
