"""Historical data: energy counters (`ecoflow_energy`), hourly rollups (`<measurement>_1h`), reports
and exports, all computed by the collector through InfluxQL (InfluxDB 1.8, 2.x, 3.x)."""
