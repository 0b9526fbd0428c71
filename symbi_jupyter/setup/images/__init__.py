"""The sandbox images: the container tiers' image and the microVM guest."""
