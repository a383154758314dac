"""Energy accounting: the process's own work, where its power figures come from."""
