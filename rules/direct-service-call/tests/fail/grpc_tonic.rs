//! gRPC: a tonic channel to the sibling, and a client generated from the sibling's proto.
pub mod query_dashboard {
    tonic::include_proto!("query_dashboard");
}

use query_dashboard::dashboard_client::DashboardClient;
use tonic::transport::Channel;

pub async fn connect(dst: String) -> Result<(), tonic::transport::Error> {
    let _channel = Channel::from_static("http://query-dashboard:50051").connect().await?; // error: [direct-service-call]
    let _client = DashboardClient::connect(dst).await?; // error: [direct-service-call]
    Ok(())
}
