"""rosbag2 tools: evaluate the localizer on a recording (offline or live), datasets to bags."""
