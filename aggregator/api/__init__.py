"""HTTP and WebSocket routes of the aggregation server, one module per resource."""
