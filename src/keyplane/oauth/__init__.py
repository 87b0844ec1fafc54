"""Connected apps over OAuth 2.0: the authorization server built on Authlib's server core.

``wiring`` builds the services (no Authlib import); ``server`` holds the Authlib grants and
endpoints; ``adapter`` turns a Starlette request into an Authlib request and back.
"""
