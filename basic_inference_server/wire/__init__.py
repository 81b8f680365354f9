"""Event-loop HTTP/1.1 serving shared by the gateway front and the endpoint servers:
the connection protocol (:mod:`.connection`) and the gunicorn worker class (:mod:`.worker`)."""
