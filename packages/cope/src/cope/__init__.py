"""COPE: small and large LLMs collaborating through plans, in a cost-saving cascade."""
