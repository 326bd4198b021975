"""Process-level settings every entry point applies: allocator, DDS profile, atomic files."""
