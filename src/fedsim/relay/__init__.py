"""The relay: routes opaque messages between site agents, authenticated per site.

Nothing is imported here: the agent imports ``fedsim.relay.client`` and ``limits`` at a
remote site, where the server's libraries (uvicorn, starlette) are not installed.
"""
