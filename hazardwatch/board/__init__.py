"""The duty-room alarm board: one static page, no build step, nothing fetched from the internet."""
