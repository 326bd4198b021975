"""mspr_training: training, evaluation and export for mspr_ros."""
