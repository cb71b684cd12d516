"""A KB open for work: the read service a writer runs for readers, and what status reports."""
