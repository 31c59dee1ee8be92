"""KServe Open Inference Protocol v2 (REST): routes and the wire codec."""
