"""Looking inside a trained model: the inspection commands and the training callbacks that show it."""
