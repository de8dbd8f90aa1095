"""`make bench`: paylinks measured side by side with what users would use instead."""
