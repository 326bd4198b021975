"""From one regressed pose to what the robot is told: gating, frame chain, covariance ."""
