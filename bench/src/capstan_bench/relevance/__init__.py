"""`capstan bench relevance`: recall and agreement of the three engines on a real-text corpus."""
