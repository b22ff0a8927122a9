"""Detection heads (DBNet, FCENet, PANet), each with its model, targets, loss and post-processing together."""
