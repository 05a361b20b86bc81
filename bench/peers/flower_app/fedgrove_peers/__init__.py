"""fedgrove's demo task on Flower: the peers benchmark's ServerApp and ClientApp (bench/peers/)."""
