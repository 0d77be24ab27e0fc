"""``sockfleet web``: a read-only page and JSON API over the same questions as the command line.

``command`` starts it (checks, then uvicorn on a socket it binds itself); ``app`` is the ASGI
application with its guard (login, strict headers); ``api`` answers ``/api/v1/<question>`` by running
the command line's own parser and question; ``passwords`` keeps the users' salted hashes.  The page
itself is static files under ``static/`` that ask the API.
"""
