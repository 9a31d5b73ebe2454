"""The public, OpenAI-compatible relay API: images, jobs, models and image files."""
