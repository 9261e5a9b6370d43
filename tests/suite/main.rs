mod provider;
mod time4vps_fake;
