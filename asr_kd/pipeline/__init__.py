"""The recipe: where files live, the stages in order, their mechanics, and the report."""
