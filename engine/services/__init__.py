"""Long-running and remote services: background jobs with cancel events, the Neuronpedia client."""
