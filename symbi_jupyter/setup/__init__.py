"""Setting up the host for the sandbox tiers: packages, daemon, images, and the doctor."""
