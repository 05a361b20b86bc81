"""A self-hosted aggregation server that speaks the BranchKey protocol.

The official `branchkey` client (3.x) works against it unchanged: a leaf switches between the hosted
BranchKey service and this server by changing its host. Build the ASGI app with
`aggregator.app.create_app(settings)`; run it with `fedgrove aggregator serve`.
"""
