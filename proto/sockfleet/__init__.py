"""sockfleet: what is open, what was open, and who talks to whom, across a fleet of Linux servers."""
