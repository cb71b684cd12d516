"""Foundations every layer uses: durable writes, disk room, redaction, fault points, progress,
the KB lock."""
