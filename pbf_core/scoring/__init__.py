"""Build scoring: every layer of a build segmented, its defects joined through the layers."""
