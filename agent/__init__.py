"""Agent: supervises model server processes on one host and reports them to the controller."""
