"""Model builders (Keras and TFF functional models) and their registry."""
