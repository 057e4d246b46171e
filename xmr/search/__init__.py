"""Search over a user's collection with any trained xmr model: index (faiss), engine, HTTP server."""
