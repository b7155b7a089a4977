"""TFF worker services and the transport to them: the service, mutual TLS and certificates, the sites' message framing."""
